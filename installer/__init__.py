"""cosmos-predict2-overlay: installs the NPU/CUDA/CPU patch overlay over upstream cosmos-predict2 (see cli.py).

Imported as `installer` from a checkout (`python -m installer`) or as `cosmos_predict2_overlay` when installed;
all imports inside are relative so both names work.
"""

__version__ = "0.1.0"
