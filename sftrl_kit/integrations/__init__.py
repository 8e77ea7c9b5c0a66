"""The kit's environments for trainers researchers already scale with (docs/integrations.md).

- `integrations.token_episodes`: an episode kept as tokens, which TRL and verl train on;
- `integrations.trl`: multi-turn episodes in TRL's GRPOTrainer (`rollout_func`);
- `integrations.verl_data`: the kit's tasks as verl parquet datasets;
- `integrations.verl_agent_loop`: the verl agent loop "sftrl" (verl's own environment);
- `integrations.gymnasium`: the environments registered with gymnasium
  (`gymnasium.make("sftrl/GeneralPoints-v0")`).

Each module imports its framework only when it is imported itself, so the kit runs
without any of them.
"""
