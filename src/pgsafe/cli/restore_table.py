from typing import Any

def add_parser(sub: Any, name: str) -> None:
    sub.add_parser(name)
