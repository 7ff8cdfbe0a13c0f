"""Train a Quiet-STaR model: `python train.py [--config FILE] [--section.key=value ...]`, or under torchrun.

The command line and the loop are in `quietstar/training/loop.py`; `python train.py --help` lists the options.
"""

import sys

from quietstar.training.loop import main

if __name__ == "__main__":
    main(sys.argv[1:])
