"""The figures of `fit all`, known without importing matplotlib (``api`` writes them,
``forking`` hands them to children, ``plots`` draws them)."""

#: Every figure: (file, function of ``plots``), in the order report.md lists them.
FIGURES = (("isotonic_curves.png", "isotonic_curves"), ("data_efficiency.png", "data_efficiency"),
           ("batch_size_fit.png", "batch_size_fit"), ("pareto.png", "pareto"),
           ("learning_rate_fit.png", "learning_rate_fit"), ("sigma_star.png", "sigma_star"),
           ("data_sigma_n.png", "data_sigma_n"))
