"""fedcogen.simulations: experiments, one subpackage per family: ``federation``, ``deploy``, ``evaluation``,
``privacy``, ``bench``, ``demo``."""
