"""Everything that touches Ray: the cluster, the Tuner and its searcher, the trial worker (a Tune
trial actor or a Ray Train worker group), fault injection."""
