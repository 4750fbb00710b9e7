"""Acting on alerts and commands: the webhook and control API, the plan, dedupe, autonomy modes."""
