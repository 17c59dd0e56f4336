"""Shadow traffic: copy requests to the other side, compare the answers, keep the verdict.

`model` holds the shared values; `compare` is the one comparison engine (live
shadow and offline runs); `results` counts and groups per route and decides
the verdict; `store` keeps them in PostgreSQL for every replica; `runtime`
queues the copies off the request path.
"""
