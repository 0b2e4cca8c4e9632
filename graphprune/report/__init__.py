"""Reports for people: the dependency graph as DOT or PNG, width charts, and the supported-ops table.

They read the stages' records and draw them; nothing below imports them.
"""
