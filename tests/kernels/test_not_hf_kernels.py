"""Our top-level ``kernels`` package shares its name with Hugging Face's ``kernels``; transformers probes
for that one (hub kernels, flash-attention fallbacks). It must not take ours for it."""
import subprocess
import sys

from tests.conftest import REPO

PROBE = """
import sys
from winnow import kernels
assert getattr(kernels, "__winnow__", False), kernels.__file__
from transformers.utils import import_utils
assert not import_utils.is_kernels_available(), "transformers thinks winnow's kernels is HF kernels"
import transformers.integrations.hub_kernels as hub
assert not hasattr(hub, "get_kernel") or hub.get_kernel.__module__ != "kernels"
from transformers import AutoConfig  # the lazy top-level import still works
print("ok", import_utils._is_package_available("kernels", return_version=True))
"""


def test_transformers_does_not_take_our_kernels_for_hf_kernels():
    proc = subprocess.run([sys.executable, "-c", PROBE], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith("ok")
