"""Reports: the Pareto analysis and the Plotly charts shared by the dashboard and exported reports."""
