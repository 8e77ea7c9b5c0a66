"""sftrl-kit: study how SFT and verifier-based RL post-training change generalization."""

__version__ = "0.1.0"
