"""What a failed SQLite call means: an item's own error, or a database jobd cannot use now."""

from __future__ import annotations

import sqlite3

# Errors one item's data can cause (a constraint): a batch's statement that meets one is
# done again item by item, so that only that item fails.
ITEM_ERRORS = (sqlite3.IntegrityError,)
