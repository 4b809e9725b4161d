#!/usr/bin/python3
"""make_corpus.py — writes the machine-made part of the tokenizer conformance
corpus (corpus/edge_*.txt, corpus/fuzz_*.txt): emoji, numbers, whitespace
runs, CRLF, special tokens inside text, Unicode edge cases, and seeded random
mixtures of all of these. The hand-written files (code, prose, multilingual)
are not touched. Deterministic: rerunning gives the same files.

usage: /usr/bin/python3 tests/tokenizer/make_corpus.py"""
import os
import random

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")


def write(name, text):
    with open(os.path.join(HERE, name), "w", encoding="utf-8", newline="") as f:
        f.write(text)


emoji = [
    "😀", "😂", "🥲", "❤️", "👍", "👍🏽", "👩‍💻", "👨‍👩‍👧‍👦", "🏳️‍🌈", "🏴‍☠️", "🇯🇵", "🇺🇸", "🇩🇪",
    "1️⃣", "#️⃣", "©️", "™", "🧑🏿‍🚀", "👁️‍🗨️", "🫠", "🦀", "🐍", "☕", "✨", "🔥", "💯", "🤷‍♂️",
    "👩🏻‍❤️‍💋‍👨🏼", "🏴󠁧󠁢󠁳󠁣󠁴󠁿", "⚽️", "✌︎", "🙇‍♀️",
]
lines = []
for i, e in enumerate(emoji):
    lines.append(f"Emoji {i}: {e} repeated {e}{e}{e} and spaced {e} {e} , after word{e}word.")
lines.append("Faces: " + "".join(emoji) + " end")
lines.append("Keycaps: 0️⃣1️⃣2️⃣3️⃣4️⃣5️⃣6️⃣7️⃣8️⃣9️⃣🔟 flags: 🇫🇷🇮🇹🇪🇸🇬🇧🇨🇳🇰🇷🇮🇳🇧🇷")
lines.append("Text with emoji: I love 🍕 and 🍣! Meeting at 3pm 📅, don't be late ⏰. Ship it 🚀🚀🚀")
write("edge_emoji.txt", "\n".join(lines) + "\n")

lines = []
for n in [0, 7, 42, 100, 999, 1000, 1234, 12345, 123456, 1234567, 2**31 - 1, 2**63, 10**20 + 7]:
    lines.append(f"n={n} -n=-{n} n.5={n}.5 n,000={n:,} hex=0x{n:x} bin=0b{n:b}")
lines.append("pi = 3.14159265358979323846264338327950288419716939937510582097494459230781640628620899862803")
lines.append("e = 2.7182818284590452353602874713526624977572470936999595749669676277240766303535475945713821785251664274")
lines.append("digits: " + "".join(str(i % 10) for i in range(300)))
lines.append("ids: " + " ".join(str(random.Random(1).randrange(10**k)) for k in range(1, 25)))
lines.append("phone +1 (555) 010-9999, ISBN 978-3-16-148410-0, IPv4 192.168.0.1, IPv6 2001:db8::ff00:42:8329")
lines.append("Arabic-Indic ٠١٢٣٤٥٦٧٨٩ Devanagari ०१२३४५६७८९ fullwidth ０１２３ roman Ⅻ ⅻ fractions ½ ¾ ⅞ superscript x² x³ subscript H₂O circled ①②③")
write("edge_numbers.txt", "\n".join(lines) + "\n")

ws = [" ", "  ", "   ", "    ", "\t", "\t\t", " \t", "\t ", "\u00a0", "\u2009", "\u3000", "\u200b",
      "\u2028", "\u2029", "\u0085", "\u000b", "\u000c", "\u1680", "\u202f", "\u205f", "\u180e", "\ufeff"]
parts = []
for i, w in enumerate(ws):
    parts.append(f"word{w}word{w}{w}end {i}{w}\n")
    parts.append(f"{w}leading and trailing{w}\n")
parts.append("trailing spaces   \nlines with CRLF\r\nanother\r\n\r\n\r\nblank lines above\n\n\n\nand a lone CR\rhere\n")
parts.append("spaces before newline    \n    spaces after newline\n \n  \n   \n\t\n")
parts.append("many spaces:" + " " * 40 + "x" + "\t" * 9 + "y" + "\n" * 5 + "z" + " \n \n" * 3)
parts.append("end without newline  ")
write("edge_whitespace.txt", "".join(parts))

specials = ["<|im_start|>", "<|im_end|>", "<|endoftext|>", "<|begin_of_text|>", "<|end_of_text|>",
            "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "<think>", "</think>",
            "<tool_call>", "</tool_call>", "<|reserved_special_token_5|>", "<|fim_prefix|>", "<|vision_pad|>"]
lines = []
for s in specials:
    lines.append(f"before {s} after")
    lines.append(f"{s}{s}glued{s}")
    lines.append(f"  {s}  spaced  {s}\t")
    lines.append(f"partial {s[:-1]} and {s[1:]} and <{s}> and {s[:4]}|{s[4:]}")
lines.append("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nHi! What's 2+2?<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n4<|im_end|>")
lines.append("<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHello<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n")
lines.append("<|endoftext|><|endoftext|><|endoftext|>text<|im_start|><|im_end|><| im_start |><|IM_START|>")
write("edge_special.txt", "\n".join(lines) + "\n")

lines = [
    "NFD: Cafe\u0301 re\u0301sume\u0301 nai\u0308ve A\u030a ohm \u2126 angstrom \u212b kelvin \u212a",
    "NFC: Café résumé naïve Å",
    "combining stack: a\u0301\u0302\u0303\u0304 e\u0323\u0302 q\u0307\u0323 s\u0323\u0307 x\u0300\u0316",
    "Hangul jamo: \u1100\u1161\u11a8 \u1112\u1161\u11ab \u1100\u1173\u11af compatibility ㄱㅏ",
    "Contractions odd case: 'S 'T 'RE 'VE 'M 'LL 'D 's 't 're 've 'm 'll 'd 'Ll 'lL 're's",
    "Long s and kelvin in contractions: it'ſ ok, 200\u212a, 'ſ 'K",
    "Zero width: a\u200bb c\u200cd e\u200df \u2060g \ufeffh",
    "Bidi: \u202eRTL override\u202c \u200fRLM \u200eLRM \u2066isolate\u2069",
    "Variation selectors: \u2764\ufe0f \u2764\ufe0e \u845b\U000e0100 \u845b\U000e0101",
    "Private use and astral: \ue000\uf8ff \U0001d11e \U0001d400\U0001d401 \U00020000\U0002a6d6 \U0010fffd",
    "Controls: a\u0001b\u0007c\u001bd\u007fe\u0080f\u009fg",
    "Math: ∀x∈ℝ, ∃y: x²+y²=1 ⇒ |x|≤1; ∑ᵢ aᵢ ≠ ∏ⱼ bⱼ; ∫₀^∞ e^{-x} dx = 1",
    "Box drawing: ┌─┬─┐ │a│b│ └─┴─┘ ░▒▓█ ▲▼◆●",
    "Ligatures and compat: ﬁ ﬂ ﬀ Ⅸ ㎏ ㍿ ﹏ ＿ ｡ ･",
    "Apostrophes: it’s rock ’n’ roll, l’été, O’Brien, '90s, 'quoted', ''double'', '''triple'''",
    "Punctuation runs: ...!!!???,,,;;;:::---___===+++***&&&%%%$$$###@@@~~~^^^|||\\\\\\///",
    "Brackets: ([{<>}]) 【】〖〗《》〈〉「」『』（）［］｛｝",
    "Mixed newline punctuation: foo.\n\nbar!\r\n\r\nbaz?\n\t\n",
]
write("edge_unicode.txt", "\n".join(lines) + "\n")

# Seeded random mixtures: words, numbers, punctuation, whitespace, scripts.
pool_words = ("the of and to in is was for on that with as by at from it be this are or an have not "
              "model token merge layer weight tensor gradient 模型 合并 权重 トークン 学習 모델 병합 "
              "модель слияние نموذج دمج मॉडल विलय λόγος Straße naïve café").split()
pool_punct = list(".,;:!?'\"()[]{}<>/\\|@#$%^&*-_=+~`") + ["'s", "'ll", "'T", "—", "…", "“", "”"]
pool_ws = [" ", " ", " ", "  ", "\t", "\n", "\r\n", "   ", "\n\n", " \n", "\u00a0", "\u3000"]
pool_misc = emoji + specials[:4] + ["\u0301", "e\u0301", "\u1100\u1161", "12", "3.5", "1,000", "007", "2024"]
for k in range(8):
    rnd = random.Random(1000 + k)
    out = []
    for _ in range(2200):
        r = rnd.random()
        if r < 0.45:
            w = rnd.choice(pool_words)
            out.append(w.upper() if rnd.random() < 0.1 else w.capitalize() if rnd.random() < 0.2 else w)
        elif r < 0.6:
            out.append(rnd.choice(pool_punct))
        elif r < 0.85:
            out.append(rnd.choice(pool_ws))
        elif r < 0.93:
            out.append(str(rnd.randrange(10 ** rnd.randrange(1, 12))))
        else:
            out.append(rnd.choice(pool_misc))
    write(f"fuzz_{k}.txt", "".join(out))
