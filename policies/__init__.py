"""Policy layer: the YAML schema and pure functions from (policy, load) to decisions.

Nothing in this package does I/O: callers read files and pass text in.
"""

from policies.schema import CategoryPolicy, Category, PolicyConfig, PolicyError, parse_policies

__all__ = ["Category", "CategoryPolicy", "PolicyConfig", "PolicyError", "parse_policies"]
