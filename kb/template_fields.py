"""A template's content fields and statuses, apart from kb.templates so CLI options list them without
importing the database layer."""

CONTENT_FIELDS = (
    "name",
    "template_type",
    "tags",
    "description",
    "application_scope",
    "steps",
    "example_problem",
    "example_solution",
    "example_answer",
    "extra",
)
STATUSES = ("active", "deprecated")
