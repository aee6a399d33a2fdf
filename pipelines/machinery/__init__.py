"""What the jobs share: Beam runners and options, the published-dataset protocol and its lock,
reading records and episode inputs, policies by name, movies, and a job's result and summary."""
