"""One trial of the sweep: data, training, coupling, indices, tracking."""
