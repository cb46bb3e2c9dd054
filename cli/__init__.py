"""`python -m broker <command>`: the broker's command line, outside the domain package `broker/`.

    cli/main.py          the table of commands (name, help, arguments, handler module), the parser, main()
    cli/check_config.py  check-config
    cli/procfile.py      procfile (and the process list `make run` starts)
    cli/devrun.py        run: the dev supervisor (web + workers + an embedded Redis if none answers)
    cli/call.py          call: one tool call through the HTTP API
    cli/batch.py         batch: a file of calls, live progress, the results as JSON Lines
    cli/api.py           what call and batch share: a POST whose failure is said on stderr
    cli/connect.py       connect: a stdio MCP server for desktop hosts, bridged to a running broker

`broker/__main__.py` is only the entry point of `python -m broker`: it calls `cli.main.main`.
"""
