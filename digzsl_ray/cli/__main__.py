"""``python -m digzsl_ray.cli``: the same as the ``digzsl`` console script."""

import sys

from digzsl_ray.cli.main import main

sys.exit(main())
