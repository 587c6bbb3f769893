from .pyversion import require

require()  # one line, not a SyntaxError, where `python` is older than 3.12

import sys  # noqa: E402

from .cli import main  # noqa: E402

sys.exit(main())
