"""User-facing errors: one clear line naming the file, column or key, and a non-zero exit, no traceback."""


class WinnowError(Exception):
    """A per-run problem caused by input or configuration; the CLI prints it as one line."""
