"""Post-training: SFT on TRL (sft.py) and multi-turn PPO with a verifier (ppo.py)."""
