"""Hugging Face Spaces' entry point (and `python app.py` from a checkout): the playground's
launcher, `playground.app`, which the installed console command `gpt2-playground` also runs."""
from playground.app import main, parse_args

__all__ = ["main", "parse_args"]

if __name__ == "__main__":
    main()
