"""The one error base the orchestrator looks at: failures that a retry cannot fix."""


class PermanentError(Exception):
    """Bad or missing input, or a refused decision: retrying the same task gives the same answer.

    DAG tasks fail at once on these instead of spending their retries (which are kept for
    transient trouble: a busy database, a lost Spark executor, a network hiccup).
    """
