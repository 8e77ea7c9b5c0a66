"""The kit's environments for trainers researchers already scale with.

- `integrations.trl`: multi-turn episodes in TRL's GRPOTrainer (`rollout_func`);
- `integrations.gymnasium`: the environments registered with gymnasium
  (`gymnasium.make("sftrl/GeneralPoints-v0")`).

Each module imports its framework only when it is imported itself, so the kit runs
without any of them.
"""
