// The data loader: every window once per epoch, seeded shuffles that change
// per epoch, the same windows for any split of a global batch, and clear
// errors for bad shards and out-of-vocabulary ids.
#include <gtest/gtest.h>

#include <cstring>
#include <set>

#include "core/error.hpp"
#include "core/file_io.hpp"
#include "data/loader.hpp"
#include "data/shard.hpp"
#include "test_support.hpp"

namespace emix {
namespace {

constexpr int kSeqLen = 8;
constexpr int kVocab = 65536;

// Three shards whose tokens encode (shard, position): token = 10000·s + i.
class LoaderTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const int sizes[] = {81, 17, 45};  // 10, 2 and 5 windows of 8 (+1)
    for (int s = 0; s < 3; ++s) {
      std::vector<uint16_t> tokens(static_cast<size_t>(sizes[s]));
      for (int i = 0; i < sizes[s]; ++i) tokens[static_cast<size_t>(i)] = static_cast<uint16_t>(10000 * s + i);
      write_shard(dir_ / ("train_" + std::to_string(s) + ".bin"), tokens);
    }
  }
  std::string pattern() const { return (dir_ / "train_*.bin").string(); }
  // First input token of each window read at positions [first, first+count).
  std::vector<int32_t> window_ids(WindowStream& stream, uint64_t first, int count) {
    std::vector<int32_t> inputs(static_cast<size_t>(count) * kSeqLen);
    std::vector<int32_t> targets(inputs.size());
    stream.read(first, count, inputs, targets);
    std::vector<int32_t> ids;
    for (int row = 0; row < count; ++row) {
      for (int t = 0; t < kSeqLen; ++t) {
        size_t k = static_cast<size_t>(row) * kSeqLen + static_cast<size_t>(t);
        EXPECT_EQ(targets[k], inputs[k] + 1);  // targets are the next tokens
        if (t > 0) {
          EXPECT_EQ(inputs[k], inputs[k - 1] + 1);
        }
      }
      ids.push_back(inputs[static_cast<size_t>(row) * kSeqLen]);
    }
    return ids;
  }
  test::TempDir dir_;
};

TEST_F(LoaderTest, EveryWindowOncePerEpoch) {
  TokenDataset dataset(pattern(), kSeqLen, kVocab);
  EXPECT_EQ(dataset.num_windows(), 17u);
  EXPECT_EQ(dataset.num_tokens(), 143u);
  for (bool shuffle : {false, true}) {
    WindowStream stream(dataset, 7, shuffle);
    for (uint64_t epoch = 0; epoch < 3; ++epoch) {
      auto ids = window_ids(stream, epoch * 17, 17);
      std::set<int32_t> distinct(ids.begin(), ids.end());
      EXPECT_EQ(distinct.size(), 17u);
      for (int32_t id : ids) EXPECT_EQ(id % 10000 % kSeqLen, 0);  // windows start at multiples of T
    }
  }
}

TEST_F(LoaderTest, ShuffleIsSeededAndChangesPerEpoch) {
  TokenDataset dataset(pattern(), kSeqLen, kVocab);
  WindowStream a(dataset, 7, true);
  WindowStream b(dataset, 7, true);
  WindowStream other_seed(dataset, 8, true);
  WindowStream ordered(dataset, 7, false);
  auto epoch0 = window_ids(a, 0, 17);
  EXPECT_EQ(epoch0, window_ids(b, 0, 17));
  EXPECT_NE(epoch0, window_ids(other_seed, 0, 17));
  EXPECT_NE(epoch0, window_ids(a, 17, 17));
  auto in_order = window_ids(ordered, 0, 17);
  EXPECT_TRUE(std::is_sorted(in_order.begin(), in_order.end()));
  // Random access gives what sequential reading gives.
  auto epoch1 = window_ids(a, 17, 6);
  EXPECT_EQ(window_ids(b, 20, 3), std::vector<int32_t>(epoch1.begin() + 3, epoch1.end()));
}

TEST_F(LoaderTest, AnySplitOfAGlobalBatchReadsTheSameWindows) {
  TokenDataset dataset(pattern(), kSeqLen, kVocab);
  WindowStream stream(dataset, 3, true);
  const uint64_t step_start = 12;  // crosses into epoch 1
  const int global = 12;
  auto whole = window_ids(stream, step_start, global);
  for (int ranks : {1, 2, 3, 4}) {
    for (int batch : {1, 3}) {
      if (global % (ranks * batch) != 0) continue;
      int accumulation = global / (ranks * batch);
      std::vector<int32_t> pieces;
      for (int rank = 0; rank < ranks; ++rank) {
        for (int micro = 0; micro < accumulation; ++micro) {
          auto ids = window_ids(stream, micro_batch_start(step_start, rank, micro, accumulation, batch), batch);
          pieces.insert(pieces.end(), ids.begin(), ids.end());
        }
      }
      EXPECT_EQ(pieces, whole) << ranks << " ranks, batch " << batch;
    }
  }
}

TEST_F(LoaderTest, OutOfVocabularyTokensAreAnErrorNamingTheFile) {
  TokenDataset dataset(pattern(), kSeqLen, /*vocab_size=*/20000);
  WindowStream stream(dataset, 0, false);
  std::vector<int32_t> inputs(kSeqLen);
  std::vector<int32_t> targets(kSeqLen);
  stream.read(0, 1, inputs, targets);  // shard 0 is within the vocabulary
  try {
    stream.read(12, 1, inputs, targets);  // shard 2 holds ids >= 20000
    FAIL() << "expected an error";
  } catch (const Error& e) {
    std::string message = e.what();
    EXPECT_NE(message.find("train_2.bin"), std::string::npos) << message;
    EXPECT_NE(message.find("not below the vocabulary size 20000"), std::string::npos) << message;
  }
}

TEST_F(LoaderTest, BadShardsAreRejectedAtStart) {
  std::string bytes = read_text_file(dir_ / "train_1.bin");
  write_text_file_atomic(dir_ / "train_3.bin", bytes.substr(0, bytes.size() - 3));
  try {
    TokenDataset dataset(pattern(), kSeqLen, kVocab);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("train_3.bin"), std::string::npos) << e.what();
  }
  EXPECT_THROW(TokenDataset((dir_ / "val_*.bin").string(), kSeqLen, kVocab), Error);
  EXPECT_THROW(TokenDataset((dir_ / "train_1.bin").string(), 64, kVocab), Error);  // too short for one window
}

// Each header field checked where the shard is opened, the message naming
// the file, the offset and what was expected: the magic (offset 0), the
// version (offset 4) and a negative token count (offset 8), each int32.
TEST_F(LoaderTest, ShardHeaderFieldsAreCheckedOneByOne) {
  const std::string good = read_text_file(dir_ / "train_1.bin");
  auto with_field = [&](size_t offset, int32_t value) {
    std::string bytes = good;
    std::memcpy(bytes.data() + offset, &value, sizeof value);
    return bytes;
  };
  const std::pair<std::string, std::string> cases[] = {
      {with_field(0, 12345), "magic number 12345 at offset 0"},
      {with_field(4, 7), "unsupported shard version 7 at offset 4"},
      {with_field(8, -5), "negative token count -5 at offset 8"},
  };
  for (const auto& [bytes, expected] : cases) {
    write_text_file_atomic(dir_ / "train_3.bin", bytes);
    try {
      TokenDataset dataset(pattern(), kSeqLen, kVocab);
      ADD_FAILURE() << "expected an error: " << expected;
    } catch (const Error& e) {
      const std::string message = e.what();
      EXPECT_NE(message.find("train_3.bin"), std::string::npos) << message;
      EXPECT_NE(message.find(expected), std::string::npos) << message;
    }
  }
}

}  // namespace
}  // namespace emix
