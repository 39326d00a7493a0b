"""Hardware: the static profile of this machine and live memory sampling."""
