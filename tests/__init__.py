"""raftchat tests: ``unit`` (pure code and scripted core scenarios), ``sim`` (simulation)."""
