"""Online ranking: the champion scores candidates; holdout users keep the chronological feed."""
