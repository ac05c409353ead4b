import sys

from nested_jax.cli import main

sys.exit(main())
