"""The seed libraries' APIs on latentsurgeon: one module per seed (``detoxai``,
``torch_concepts``, ``tdhook``, ``lfxai``, ``shortcut_detect``), each exposing that library's
documented names, signatures and defaults as thin adapters over latentsurgeon's own API (no second
implementation of any method). Code written for a seed runs with only its import lines changed:
``from latentsurgeon.compat.detoxai import PCLARC`` instead of ``from detoxai... import PCLARC``.
``docs/compat.md`` has the migration tables and every deliberate difference.

The modules are imported on demand (``import latentsurgeon.compat.tdhook``), so an optional
dependency of one seed (lightning, tensordict) never slows or breaks another.
"""

__all__: list[str] = []
