"""Import-time stand-in for torchvision in the peers' virtual environment only.

CAREamics imports torchvision in its LVAE and model-export modules, which Noise2Void never
runs. torchvision from PyPI needs a torch build other than the CPU build this project pins, so
the peers' environment gets this stand-in instead; calling anything in it raises.
"""

__version__ = "0.0.0+photongap-stub"
