"""Code shared by the web and worker processes: settings, pools, schema, money and ledger rules."""
