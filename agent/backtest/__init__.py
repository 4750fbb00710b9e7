"""`agent backtest`: replay the decisions (rules, Alertmanager routing, the agent's plan) over past data."""
