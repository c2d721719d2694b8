"""From fluxes to findings (issue 14): regional budgets over zones (:mod:`.zones`,
:mod:`.area`, :mod:`.budgets`)."""

from __future__ import annotations

from kgml_grid.analysis.area import cell_area
from kgml_grid.analysis.budgets import budget_table, zone_budgets
from kgml_grid.analysis.zones import Zones, read_zones

__all__ = ["Zones", "budget_table", "cell_area", "read_zones", "zone_budgets"]
