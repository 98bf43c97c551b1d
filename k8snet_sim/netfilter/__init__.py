"""netfilter."""
