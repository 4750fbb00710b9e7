"""Every `agent ...` verb: the parser, output (tables, `--json`), the control client, completion, and the
`todo`, `stack`, `tls`, `backtest` and `--once` front ends. The top of the house: nothing imports it."""
