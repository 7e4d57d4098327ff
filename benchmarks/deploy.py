"""Deployment benchmark (see kdpipe.deploy_benchmark): python benchmarks/deploy.py [FILE ...]"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from kdpipe.deploy_benchmark import main

if __name__ == "__main__":
    sys.exit(main())
