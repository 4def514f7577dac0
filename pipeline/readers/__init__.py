"""Input readers for layouts with more than one file per shard: tars, img2dataset output folders."""
