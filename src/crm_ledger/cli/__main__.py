"""``python -m crm_ledger.cli``: the same as the ``crm-ledger`` command."""

from crm_ledger.cli import main

main()
