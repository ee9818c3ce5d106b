"""Statistics on plain arrays: predictive lifetime value (BG/NBD, Gamma-Gamma) and initiative
impact (difference-in-differences with bootstrap intervals). numpy and scipy live here only."""
