// GPT-2's tokenizer: exact ids on the golden cases, lossless round trips of
// any bytes, the pre-tokenizer's pieces, thread safety, bad tokenizer files;
// and corpus tokenizing: shards, splits, chunked encoding, Gutenberg.
#include <gtest/gtest.h>

#include <cstdlib>
#include <thread>

#include "config/json_reader.hpp"
#include "core/error.hpp"
#include "core/file_io.hpp"
#include "core/rng.hpp"
#include "data/corpus.hpp"
#include "data/shard.hpp"
#include "data/tokenizer/gpt2_tokenizer.hpp"
#include "data/tokenizer/pretokenize.hpp"
#include "test_support.hpp"

namespace emix {
namespace {
namespace fs = std::filesystem;

// Tests that need GPT-2's files fail (not skip) without them: CI fetches them.
class Gpt2Test : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(fs::exists(test::tokenizer_dir() / "encoder.json") && fs::exists(test::tokenizer_dir() / "vocab.bpe"))
        << "GPT-2's tokenizer files are not in " << test::tokenizer_dir() << ": run scripts/fetch_tokenizer.sh";
  }
  static const Gpt2Tokenizer& tokenizer() {
    static const Gpt2Tokenizer loaded = Gpt2Tokenizer::load(test::tokenizer_dir());
    return loaded;
  }
};

std::string random_bytes(Rng& rng, size_t size) {
  std::string bytes(size, '\0');
  for (char& c : bytes) c = static_cast<char>(rng.next_below(256));
  return bytes;
}

// Text with everything the pre-tokenizer treats specially, at random.
std::string random_text(Rng& rng, size_t pieces) {
  static const std::vector<std::string> fragments = {
      "word", " word", "Word", "'s", "'re", "'T", "123", " 4", "!!", " ?", " ", "  ", "   ", "\n", "\n\n", "\r\n", "\t",
      "\xC2\xA0", "\xE2\x80\x83", "caf\xC3\xA9", "\xE4\xB8\xAD\xE6\x96\x87", "\xF0\x9F\x98\x80", "\xFF", "\xC3", "\xED\xA0\x80", "-"};
  std::string text;
  for (size_t i = 0; i < pieces; ++i) text += fragments[rng.next_below(fragments.size())];
  return text;
}

using Pieces = std::vector<std::string>;

Pieces pieces_of(std::string_view text) {
  Pieces pieces;
  for (std::string_view piece : pretokenize(text)) pieces.emplace_back(piece);
  return pieces;
}

// ---------------------------------------------------------------- tokenizer ----

TEST_F(Gpt2Test, EncodesEveryGoldenCaseExactly) {
  Json golden = Json::parse(read_text_file(test::golden_dir() / "tokenizer_gpt2.json"));
  EXPECT_EQ(tokenizer().eot_id(), golden.at("eot_id").get<int32_t>());
  EXPECT_EQ(tokenizer().vocab_size(), golden.at("vocab_size").get<int>());
  ASSERT_FALSE(golden.at("cases").empty());
  for (const Json& c : golden.at("cases")) {
    auto text = c.at("text").get<std::string>();
    auto ids = c.at("ids").get<std::vector<int32_t>>();
    EXPECT_EQ(tokenizer().encode(text), ids) << "text: " << text;
    EXPECT_EQ(tokenizer().decode(ids), text);
  }
}

TEST_F(Gpt2Test, RoundTripsArbitraryBytes) {
  std::string all_bytes;
  for (int b = 0; b < 256; ++b) all_bytes.push_back(static_cast<char>(b));
  Rng rng(7);
  std::vector<std::string> texts = {all_bytes, all_bytes + all_bytes, std::string(100000, ' '), std::string(5000, '\n') + "x",
                                    " \t \n\r\n \xC2\xA0 x  ", std::string(20000, 'a'), "\xF0\x9F\x98", "\xC0\x80\xED\xA0\x80"};
  for (int i = 0; i < 50; ++i) texts.push_back(random_bytes(rng, rng.next_below(300)));
  for (int i = 0; i < 50; ++i) texts.push_back(random_text(rng, 40));
  for (const std::string& text : texts) {
    std::vector<int32_t> ids = tokenizer().encode(text);
    EXPECT_EQ(tokenizer().decode(ids), text);
    for (int32_t id : ids) ASSERT_TRUE(id >= 0 && id < tokenizer().vocab_size());
  }
  EXPECT_TRUE(tokenizer().encode("").empty());
}

TEST_F(Gpt2Test, EndOfTextIsOrdinaryTextButDecodesAsItsName) {
  std::vector<int32_t> ids = tokenizer().encode("<|endoftext|>");
  EXPECT_GT(ids.size(), 1u);
  EXPECT_EQ(tokenizer().decode(std::vector<int32_t>{tokenizer().eot_id()}), "<|endoftext|>");
  EXPECT_THROW(tokenizer().decode(std::vector<int32_t>{tokenizer().vocab_size()}), Error);
  EXPECT_THROW(tokenizer().decode(std::vector<int32_t>{-1}), Error);
}

TEST_F(Gpt2Test, StaysExactWhenThePieceCacheOverflows) {
  std::string words;  // more distinct pieces than the cache keeps
  for (int i = 0; i < 600000; ++i) words += fmt::format(" w{}x", i);
  std::vector<int32_t> first = tokenizer().encode(words);
  EXPECT_EQ(tokenizer().decode(first), words);
  EXPECT_EQ(tokenizer().encode(words), first);
}

TEST_F(Gpt2Test, ConcurrentEncodingMatchesSerial) {
  Rng rng(11);
  std::vector<std::string> texts;
  for (int i = 0; i < 8; ++i) texts.push_back(random_text(rng, 3000));
  std::vector<std::vector<int32_t>> serial;
  for (const auto& text : texts) serial.push_back(tokenizer().encode(text));
  std::vector<std::vector<int32_t>> parallel(texts.size());
  std::vector<std::thread> threads;
  for (size_t t = 0; t < texts.size(); ++t) {
    threads.emplace_back([&, t] {
      for (int repeat = 0; repeat < 3; ++repeat) parallel[t] = tokenizer().encode(texts[t]);
    });
  }
  for (auto& thread : threads) thread.join();
  EXPECT_EQ(parallel, serial);
}

// -------------------------------------------------------------- pretokenize ----

TEST(Pretokenize, SplitsContractionsCaseSensitively) {
  EXPECT_EQ(pieces_of("I'm they'll've we'd"), (Pieces{"I", "'m", " they", "'ll", "'ve", " we", "'d"}));
  EXPECT_EQ(pieces_of("Don'T SHOUT'S"), (Pieces{"Don", "'", "T", " SHOUT", "'", "S"}));
  EXPECT_EQ(pieces_of("x 's ?'s"), (Pieces{"x", " '", "s", " ?'", "s"}));
}

TEST(Pretokenize, WhitespaceRunsGiveBackTheirLastCharacter) {
  EXPECT_EQ(pieces_of("multiple   spaces"), (Pieces{"multiple", "  ", " spaces"}));
  EXPECT_EQ(pieces_of("a\n\nb"), (Pieces{"a", "\n", "\n", "b"}));
  EXPECT_EQ(pieces_of("a\r\nb"), (Pieces{"a", "\r", "\n", "b"}));
  EXPECT_EQ(pieces_of("a \n b"), (Pieces{"a", " \n", " b"}));
  EXPECT_EQ(pieces_of("  \tx"), (Pieces{"  ", "\t", "x"}));
  EXPECT_EQ(pieces_of("end  \n"), (Pieces{"end", "  \n"}));  // at the end nothing is given back
  EXPECT_EQ(pieces_of(" x"), (Pieces{" x"}));
  EXPECT_EQ(pieces_of("\n x"), (Pieces{"\n", " x"}));
}

TEST(Pretokenize, ClassifiesUnicodeAndInvalidBytes) {
  // U+00A0 and U+2003 are white space, but only U+0020 joins the next piece.
  EXPECT_EQ(pieces_of("a\xC2\xA0" "b \xE2\x80\x83" "c"), (Pieces{"a", "\xC2\xA0", "b", " ", "\xE2\x80\x83", "c"}));
  EXPECT_EQ(pieces_of("caf\xC3\xA9 \xE2\x85\xAB 12x"), (Pieces{"caf\xC3\xA9", " \xE2\x85\xAB", " 12", "x"}));
  EXPECT_EQ(pieces_of("a\xFF\xFE b \xC3"), (Pieces{"a", "\xFF\xFE", " b", " \xC3"}));
  EXPECT_EQ(pieces_of("3.14"), (Pieces{"3", ".", "14"}));
}

TEST(Pretokenize, PiecesConcatenateToTheInput) {
  Rng rng(3);
  for (int i = 0; i < 200; ++i) {
    std::string text = i % 2 == 0 ? random_bytes(rng, 200) : random_text(rng, 50);
    std::string joined;
    for (std::string_view piece : pretokenize(text)) {
      ASSERT_FALSE(piece.empty());
      joined += piece;
    }
    EXPECT_EQ(joined, text);
  }
}

// ------------------------------------------------------------------- corpus ----

std::vector<int32_t> concatenated_shards(const fs::path& dir, const std::string& pattern) {
  std::vector<int32_t> ids;
  for (const fs::path& shard : expand_glob((dir / pattern).string())) {
    for (uint16_t token : read_shard_tokens(shard)) ids.push_back(token);
  }
  return ids;
}

// The documents of an EOT-separated stream that starts with EOT.
std::vector<std::string> documents_of(const Gpt2Tokenizer& tokenizer, const std::vector<int32_t>& stream) {
  std::vector<std::string> documents;
  std::vector<int32_t> current;
  for (size_t i = 0; i <= stream.size(); ++i) {
    if (i == stream.size() || stream[i] == tokenizer.eot_id()) {
      if (i > 0) documents.push_back(tokenizer.decode(current));
      current.clear();
    } else {
      current.push_back(stream[i]);
    }
  }
  return documents;
}

TEST_F(Gpt2Test, CorpusShardsAreEotSeparatedDocumentsWithTheValSplit) {
  test::TempDir dir;
  std::vector<std::string> documents = {"First document.\nIt has two lines.", "Second one, caf\xC3\xA9 \xF0\x9F\x98\x80!"};
  write_text_file_atomic(dir / "b.txt", documents[1]);
  fs::create_directories(dir / "in");
  write_text_file_atomic(dir / "in" / "a.txt", documents[0]);
  std::vector<fs::path> inputs = {dir / "in", dir / "b.txt"};
  ASSERT_EQ(list_documents(inputs), (std::vector<fs::path>{dir / "in" / "a.txt", dir / "b.txt"}));

  TokenizeOptions options{.output_dir = dir / "out", .name = "tiny", .shard_tokens = 4, .val_tokens = 5};
  TokenizeSummary summary = tokenize_corpus(tokenizer(), inputs, options);
  std::vector<int32_t> expected;
  for (const auto& text : documents) {
    expected.push_back(tokenizer().eot_id());
    tokenizer().encode_into(text, expected);
  }
  std::vector<int32_t> val = concatenated_shards(dir / "out", "tiny_val_*.bin");
  std::vector<int32_t> train = concatenated_shards(dir / "out", "tiny_train_*.bin");
  EXPECT_EQ(val, std::vector<int32_t>(expected.begin(), expected.begin() + 5));
  EXPECT_EQ(train, std::vector<int32_t>(expected.begin() + 5, expected.end()));
  EXPECT_EQ(summary.documents, 2u);
  EXPECT_EQ(summary.val_tokens, 5u);
  EXPECT_EQ(summary.val_shards, 2);  // 4 + 1 tokens
  EXPECT_EQ(summary.train_tokens, expected.size() - 5);
  EXPECT_EQ(read_shard_token_count(dir / "out" / "tiny_train_000000.bin"), 4u);
  std::vector<int32_t> stream = val;
  stream.insert(stream.end(), train.begin(), train.end());
  EXPECT_EQ(documents_of(tokenizer(), stream), documents);

  // A second run with bigger shards replaces the first run's shards.
  options.shard_tokens = 1000;
  tokenize_corpus(tokenizer(), inputs, options);
  EXPECT_EQ(expand_glob((dir / "out" / "tiny_*.bin").string()).size(), 2u);
}

TEST_F(Gpt2Test, ValFractionTakesWholeDocumentsEvenlySpread) {
  test::TempDir dir;
  std::vector<std::string> documents;
  for (int i = 0; i < 10; ++i) {
    documents.push_back("Document number " + std::to_string(i) + ".");
    write_text_file_atomic(dir / fmt::format("doc{}.txt", i), documents.back());
  }
  std::vector<fs::path> inputs = {dir.path()};
  TokenizeOptions options{.output_dir = dir / "out", .name = "f", .val_fraction = 0.2, .threads = 2};
  tokenize_corpus(tokenizer(), inputs, options);
  EXPECT_EQ(documents_of(tokenizer(), concatenated_shards(dir / "out", "f_val_*.bin")),
            (std::vector<std::string>{documents[4], documents[9]}));
  EXPECT_EQ(documents_of(tokenizer(), concatenated_shards(dir / "out", "f_train_*.bin")).size(), 8u);
}

TEST_F(Gpt2Test, ChunkedEncodingEqualsWholeEncoding) {
  Rng rng(5);
  std::string text = random_text(rng, 20000);
  std::vector<std::string_view> parts = split_for_encoding(text, 200);
  ASSERT_GT(parts.size(), 50u);
  std::vector<int32_t> chunked;
  for (std::string_view part : parts) tokenizer().encode_into(part, chunked);
  EXPECT_EQ(chunked, tokenizer().encode(text));

  // A real document bigger than the corpus tokenizer's chunks, in CRLF form.
  std::string shakespeare = read_text_file(test::golden_dir() / ".." / "data" / "tinyshakespeare.txt");
  std::string book;
  for (char c : shakespeare + shakespeare) (c == '\n' ? book += "\r\n" : book += c);
  test::TempDir dir;
  write_text_file_atomic(dir / "book.txt", book);
  std::vector<fs::path> inputs = {dir / "book.txt"};
  TokenizeOptions options{.output_dir = dir / "out", .name = "big", .threads = 2};
  tokenize_corpus(tokenizer(), inputs, options);
  std::vector<int32_t> expected = {tokenizer().eot_id()};
  tokenizer().encode_into(book, expected);
  EXPECT_EQ(concatenated_shards(dir / "out", "big_train_*.bin"), expected);
}

// ---------------------------------------------------------------- gutenberg ----

TEST(Gutenberg, StripsEachMarkerStyle) {
  auto strip = [](std::string_view text) { return std::string(strip_gutenberg(text).text); };
  std::string standard = "Header\r\n*** START OF THE PROJECT GUTENBERG EBOOK X ***\r\n\r\nBook text.\r\n\r\n"
                         "*** END OF THE PROJECT GUTENBERG EBOOK X ***\r\nLicense";
  EXPECT_EQ(strip(standard), "Book text.");
  EXPECT_EQ(strip_gutenberg(standard).markers, GutenbergMarkers::kStandard);
  EXPECT_EQ(strip("Header\n***START OF THE PROJECT GUTENBERG EBOOK X***\nBook.\n***END OF THE PROJECT GUTENBERG EBOOK X***\n"), "Book.");

  std::string small_print = "Legal\n*END*THE SMALL PRINT! FOR PUBLIC DOMAIN ETEXTS*Ver.04.29.93*END*\n"
                            "The end of the road.\nEnd of it all.\nEnd of The Project Gutenberg Etext of Stories\n";
  EXPECT_EQ(strip(small_print), "The end of the road.\nEnd of it all.");
  EXPECT_EQ(strip_gutenberg(small_print).markers, GutenbergMarkers::kOlder);
  EXPECT_EQ(strip("**END THE SMALL PRINT! FOR PUBLIC DOMAIN ETEXTS*Ver.04.08.01*END**\nText.\n"
                  "The end of Project Gutenberg Etext of X\n"),
            "Text.");
  std::string shakespeare = "****   SMALL PRINT! FOR __ COMPLETE SHAKESPEARE ****\n[\"Small Print\" V.12.08.93]\n\n"
                            "<<THIS ELECTRONIC VERSION OF THE COMPLETE WORKS OF WILLIAM\nSHAKESPEARE IS COPYRIGHT>>\n\nACT I\n\n"
                            "<<THIS ELECTRONIC VERSION OF THE COMPLETE WORKS OF WILLIAM\nSHAKESPEARE IS COPYRIGHT>>\n\nACT II\n\n"
                            "End of this Etext of The Complete Works of William Shakespeare\n";
  EXPECT_EQ(strip(shakespeare), "ACT I\n\n\n\nACT II");
  EXPECT_EQ(strip("*END*THE SMALL PRINT! ...*END*\nFINIS.\n"), "FINIS.");  // no end line: to the end of the file

  EXPECT_EQ(strip("Just a text.\n*** Not a marker ***\n"), "Just a text.\n*** Not a marker ***");
  EXPECT_EQ(strip_gutenberg("Just a text.").markers, GutenbergMarkers::kNone);
}

TEST_F(Gpt2Test, CorpusCountsGutenbergMarkers) {
  test::TempDir dir;
  write_text_file_atomic(dir / "a.txt",
                         "License\n*** START OF THIS PROJECT GUTENBERG EBOOK A ***\nAlpha.\n*** END OF THIS PROJECT GUTENBERG EBOOK A ***\n");
  write_text_file_atomic(dir / "b.txt", "License\n*END*THE SMALL PRINT! FOR PUBLIC DOMAIN ETEXTS*END*\nBeta.\nEnd of Project Gutenberg Etext\n");
  write_text_file_atomic(dir / "c.txt", "Gamma.");
  std::vector<fs::path> inputs = {dir.path()};
  TokenizeOptions options{.output_dir = dir / "out", .name = "g", .gutenberg = true};
  TokenizeSummary summary = tokenize_corpus(tokenizer(), inputs, options);
  EXPECT_EQ(summary.gutenberg.standard, 1u);
  EXPECT_EQ(summary.gutenberg.older, 1u);
  EXPECT_EQ(summary.gutenberg.unmarked, 1u);
  EXPECT_GT(summary.gutenberg.dropped_bytes, 100u);
  EXPECT_EQ(documents_of(tokenizer(), concatenated_shards(dir / "out", "g_train_*.bin")),
            (std::vector<std::string>{"Alpha.", "Beta.", "Gamma."}));
}

// ---------------------------------------------------------- bad tokenizer files ----

void expect_error_naming(const fs::path& dir, const std::string& file, const std::string& detail) {
  try {
    Gpt2Tokenizer::load(dir);
    ADD_FAILURE() << "no error for a bad " << file;
  } catch (const Error& e) {
    std::string message = e.what();
    EXPECT_NE(message.find(file), std::string::npos) << message;
    EXPECT_NE(message.find(detail), std::string::npos) << message;
  }
}

TEST_F(Gpt2Test, BadTokenizerFilesGiveErrorsNamingTheFile) {
  test::TempDir dir;
  expect_error_naming(dir.path(), "encoder.json", "");  // missing
  std::string encoder = read_text_file(test::tokenizer_dir() / "encoder.json");
  std::string merges = read_text_file(test::tokenizer_dir() / "vocab.bpe");
  write_text_file_atomic(dir / "encoder.json", encoder.substr(0, 1000));
  expect_error_naming(dir.path(), "encoder.json", "invalid JSON");

  Json vocabulary = Json::parse(encoder);
  vocabulary["hello"] = 60000;
  write_text_file_atomic(dir / "encoder.json", vocabulary.dump());
  expect_error_naming(dir.path(), "encoder.json", "out of range");

  write_text_file_atomic(dir / "encoder.json", encoder);
  expect_error_naming(dir.path(), "vocab.bpe", "");  // missing
  write_text_file_atomic(dir / "vocab.bpe", "#version: 0.2\n\xC4\xA0 t\nthree symbols here\n");
  expect_error_naming(dir.path(), "vocab.bpe", "line 3: expected two symbols");
  write_text_file_atomic(dir / "vocab.bpe", "#version: 0.2\n\xC4\xA0 t\nqqqqq zzzzz\n");
  expect_error_naming(dir.path(), "vocab.bpe", "line 3: 'qqqqq' is not in the vocabulary");
  write_text_file_atomic(dir / "vocab.bpe", merges);
  EXPECT_EQ(Gpt2Tokenizer::load(dir.path()).encode("Hello world"), (std::vector<int32_t>{15496, 995}));
}

}  // namespace
}  // namespace emix
