"""The application layer: the `netevents` command, its terminal UI and the demo.

This is the only place that wires agents and consumers together; nothing in the library
(``netevents`` outside this package) or in ``netevents.agent`` imports it.

    cli.py                the parser and the mapping of errors to exit codes (main)
    options.py            options several commands share: the bus and its credentials, the
                          agent's options -> AgentConfig
    agent_commands.py     up, server, agent, import, hwtstamp, ctl (the agent itself is
                          assembled by netevents.agent.compose)
    consumer_commands.py  tail, top, archive, verify, correlate, metrics, demo
    deploy_commands.py    auth, streams
    runtime.py            stop on signals, stop after a duration
    ui.py                 the live full-screen view and the progress line
    demo.py               `netevents demo`: namespace hosts with real faults, correlated live
    demo_traffic.py       the demo's traffic generator (runs inside a host's namespace)

``python -m netevents.app`` runs the command.
"""
