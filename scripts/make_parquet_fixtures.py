#!/usr/bin/env python3
"""Write the verl-format parquet fixtures under tests/fixtures/data/ (read by tests/integration/parquet_data.rs).

DocQA-RL-1.6K ships as a verl parquet file with these columns:

  data_source   string                                  e.g. long_toc_choices_0_20000, docmath_v1
  prompt        list<struct<role: string, content: string>>  the QwenLong-L1 template, filled in
  ability       string                                  doc-math | doc-mc | doc-qa
  reward_model  struct<style: string, ground_truth: string>
  extra_info    struct<index: int64, split: string>

Files written (snappy, pyarrow's default codec, as verl's preprocessing scripts produce):

  docqa_verl.parquet      4 good rows, one per data source
  bad_rows.parquet        the same schema with null prompt, null ground truth, a system message,
                          an unknown data source, and two good rows (one without extra_info.index)
  wrong_types.parquet     prompt stored as an integer (neither a string nor a message list)
  extra_columns.parquet   2 good rows with columns no loader knows (quality, reward_model.difficulty)
  longrl_columns.parquet  longrl's own columns (id, task, document, question, answer), 1 row
  missing_column.parquet  no data_source column, reward_model without ground_truth
  zstd.parquet            the good rows compressed with zstd (a codec longrl is built without)

Requires pyarrow. Run from the repository root:

    python scripts/make_parquet_fixtures.py
"""

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

OUT = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "data"

TEMPLATE = (
    "Please read the following text and answer the question below.\n\n<text>\n{doc}\n</text>\n\n"
    "{question}\n\n"
    'Format your response as follows: "Therefore, the answer is (insert answer here)".'
)

MESSAGE = pa.struct([("role", pa.string()), ("content", pa.string())])
REWARD_MODEL = pa.struct([("style", pa.string()), ("ground_truth", pa.string())])
EXTRA_INFO = pa.struct([("index", pa.int64()), ("split", pa.string())])
SCHEMA = pa.schema(
    [
        ("data_source", pa.string()),
        ("prompt", pa.list_(MESSAGE)),
        ("ability", pa.string()),
        ("reward_model", REWARD_MODEL),
        ("extra_info", EXTRA_INFO),
    ]
)

# (data_source, ability, document, question, ground truth, index)
GOOD = [
    (
        "long_toc_choices_0_20000",
        "doc-mc",
        "Annual Report 2023 of Harbor Logistics Ltd.\n\nTable of Contents\n1. Chairman's Statement\n"
        "2. Fleet Review\n3. Risk Factors\n\n1. Chairman's Statement\nThe year saw the opening of "
        "the Rotterdam terminal, which doubled our container capacity in northern Europe. Revenue "
        "grew by 14% while fuel costs fell by 6%.\n\n2. Fleet Review\nWe retired four vessels built "
        "before 2000 and took delivery of two LNG-powered ships.",
        "What was the main operational event of the year according to the Chairman's Statement?\n"
        "(A) The retirement of four vessels\n(B) The opening of the Rotterdam terminal\n"
        "(C) A fall in revenue\n(D) The delivery of ten LNG-powered ships",
        "B",
        1021,
    ),
    (
        "docmath_v1",
        "doc-math",
        "Consolidated Statement of Income (in millions of USD)\n\n| Item | 2022 | 2023 |\n"
        "|---|---|---|\n| Net sales | 1,250.0 | 1,406.3 |\n| Cost of sales | 812.5 | 900.0 |\n"
        "| Operating income | 210.4 | 254.1 |\n\nNet sales increased primarily due to higher "
        "volumes in the Americas segment.",
        "By what percentage did net sales grow from 2022 to 2023? Answer with a number rounded "
        "to one decimal place.",
        "12.5",
        37,
    ),
    (
        "multihoprag_v1",
        "doc-qa",
        "Title: Chipmaker unveils new accelerator\nSource: The Verge\nPublished: 2023-11-14\n"
        "Nvidia announced the H200 GPU, which pairs the Hopper architecture with 141 GB of HBM3e "
        "memory.\n\nTitle: Cloud providers line up for new GPUs\nSource: TechCrunch\n"
        "Published: 2023-11-15\nAmazon Web Services, Google Cloud and Microsoft Azure said they "
        "would offer instances built on the chip Nvidia announced a day earlier.",
        "Which company announced the GPU that, according to TechCrunch, several cloud providers "
        "plan to offer a day after the announcement reported by The Verge?",
        "Nvidia",
        512,
    ),
    (
        "musique_v1",
        "doc-qa",
        "Passage 1:\nThe Mersey Ferry connects Liverpool with Birkenhead and Seacombe on the Wirral "
        "Peninsula.\n\nPassage 2:\nBirkenhead is a town in the Metropolitan Borough of Wirral, "
        "Merseyside, England, on the west bank of the River Mersey.\n\nPassage 3:\nThe River "
        "Mersey flows into Liverpool Bay, an arm of the Irish Sea.",
        "Into which bay does the river on whose west bank the ferry's Wirral destination lies flow?",
        "Liverpool Bay",
        1599,
    ),
]


def message(content, role="user"):
    return {"role": role, "content": content}


def row(data_source, ability, prompt, ground_truth, index):
    return {
        "data_source": data_source,
        "prompt": prompt,
        "ability": ability,
        "reward_model": {"style": "rule", "ground_truth": ground_truth},
        "extra_info": {"index": index, "split": "train"},
    }


def good_rows():
    return [
        row(ds, ability, [message(TEMPLATE.format(doc=doc, question=q))], gt, index)
        for ds, ability, doc, q, gt, index in GOOD
    ]


def write(name, rows, schema, compression="snappy"):
    path = OUT / name
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path, compression=compression)
    print(f"{path.relative_to(OUT.parent.parent.parent)}: {len(rows)} rows, {path.stat().st_size} bytes")


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    good = good_rows()
    write("docqa_verl.parquet", good, SCHEMA)
    write("zstd.parquet", good, SCHEMA, compression="zstd")

    ds, ability, doc, q, gt, _ = GOOD[3]
    user = message(TEMPLATE.format(doc=doc, question=q))
    bad = [
        # 1: good, no extra_info.index: the id falls back to row-1.
        row(ds, ability, [user], gt, None),
        # 2: prompt is null, not a list of messages.
        row(ds, ability, None, gt, 2),
        # 3: reward_model.ground_truth is null.
        row(ds, ability, [user], None, 3),
        # 4: a system message before the user message.
        row(ds, ability, [message("You are a helpful assistant.", "system"), user], gt, 4),
        # 5: a data source no verifier is known for.
        row("wikitext_v1", ability, [user], gt, 5),
        # 6: good.
        row(ds, ability, [user], gt, 6),
    ]
    write("bad_rows.parquet", bad, SCHEMA)

    wrong_schema = pa.schema(
        [
            ("data_source", pa.string()),
            ("prompt", pa.int64()),
            ("ability", pa.string()),
            ("reward_model", pa.struct([("style", pa.string()), ("ground_truth", pa.int64())])),
            ("extra_info", EXTRA_INFO),
        ]
    )
    wrong = [
        {
            "data_source": "docmath_v1",
            "prompt": 7,
            "ability": "doc-math",
            "reward_model": {"style": "rule", "ground_truth": 12},
            "extra_info": {"index": 1, "split": "train"},
        }
    ]
    write("wrong_types.parquet", wrong, wrong_schema)

    missing_schema = pa.schema(
        [
            ("prompt", pa.list_(MESSAGE)),
            ("ability", pa.string()),
            ("reward_model", pa.struct([("style", pa.string())])),
            ("extra_info", EXTRA_INFO),
        ]
    )
    missing = [
        {
            "prompt": good[0]["prompt"],
            "ability": "doc-mc",
            "reward_model": {"style": "rule"},
            "extra_info": {"index": 1, "split": "train"},
        }
    ]
    write("missing_column.parquet", missing, missing_schema)

    extra_schema = pa.schema(
        [
            ("data_source", pa.string()),
            ("prompt", pa.list_(MESSAGE)),
            ("ability", pa.string()),
            (
                "reward_model",
                pa.struct(
                    [("style", pa.string()), ("ground_truth", pa.string()), ("difficulty", pa.int64())]
                ),
            ),
            ("extra_info", EXTRA_INFO),
            ("quality", pa.float64()),
        ]
    )
    extra = []
    for r in good[1:3]:
        r = dict(r, quality=0.5)
        r["reward_model"] = dict(r["reward_model"], difficulty=2)
        extra.append(r)
    write("extra_columns.parquet", extra, extra_schema)

    longrl_schema = pa.schema(
        [
            ("id", pa.string()),
            ("task", pa.string()),
            ("document", pa.string()),
            ("question", pa.string()),
            ("answer", pa.string()),
        ]
    )
    _, _, doc, q, gt, index = GOOD[1]
    longrl = [{"id": str(index), "task": "docmath", "document": doc, "question": q, "answer": gt}]
    write("longrl_columns.parquet", longrl, longrl_schema)


if __name__ == "__main__":
    main()
