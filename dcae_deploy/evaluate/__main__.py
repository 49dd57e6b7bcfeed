"""``python -m dcae_deploy.evaluate [reconstruction] ...`` (see :mod:`dcae_deploy.evaluate`)."""

import sys

from dcae_deploy.cli import run_cli
from dcae_deploy.evaluate import main

sys.exit(run_cli(main))
