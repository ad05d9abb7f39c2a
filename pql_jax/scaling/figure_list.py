"""The figures of `fit all`, known without importing matplotlib (``api`` hands them to workers,
``plots`` draws them)."""

#: Every figure: (file, function of ``plots``), ordered so that alternate ones balance two
#: workers (``plots.make_figures``).
FIGURES = (("isotonic_curves.png", "isotonic_curves"), ("data_efficiency.png", "data_efficiency"),
           ("batch_size_fit.png", "batch_size_fit"), ("pareto.png", "pareto"),
           ("learning_rate_fit.png", "learning_rate_fit"), ("sigma_star.png", "sigma_star"),
           ("data_sigma_n.png", "data_sigma_n"))
