"""`python -m invsync_pipeline.cli`: the `invsync` command without its console script."""

from invsync_pipeline.cli import main

main()
