"""What an operator sees and does: views, actions, outcomes of jobs, Prometheus metrics."""
