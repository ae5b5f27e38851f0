"""Examples of user code that plugs into seqicl (see README.md, "Add your own architecture")."""
