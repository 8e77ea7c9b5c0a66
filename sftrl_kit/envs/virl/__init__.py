"""V-IRL navigation: routes (real files or generated cities), street views, env."""
