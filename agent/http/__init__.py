"""The HTTP side: the server and its connection guard, TLS and basic auth from the web config, the one
credential check every route goes through, and the routes (webhook, control API, `/-/reload`, `/-/reexec`,
`/metrics`, the status page and its assets) as thin translations into commands."""
