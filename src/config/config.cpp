#include "config/config.hpp"

#include "core/error.hpp"
#include "core/file_io.hpp"
#include "optim/optimizer.hpp"

namespace emix {

Json zero_stage_json(ZeroStage stage) {
  if (stage == ZeroStage::shard_m2) return "m2";
  return stage == ZeroStage::shard_all ? 1 : 0;
}

namespace {

// The vocabulary is padded to this multiple unless padded_vocab_size is set:
// it keeps the output-head matmul on fast, aligned shapes.
constexpr int kVocabPadMultiple = 128;

ModelConfig read_model(JsonObjectReader r) {
  ModelConfig m;
  m.vocab_size = r.get("vocab_size", m.vocab_size);
  m.padded_vocab_size = r.get("padded_vocab_size", 0);
  if (m.padded_vocab_size == 0) m.padded_vocab_size = pad_vocab(m.vocab_size, kVocabPadMultiple);
  m.n_layer = r.get("n_layer", m.n_layer);
  m.n_embd = r.get("n_embd", m.n_embd);
  m.n_head = r.get("n_head", m.n_head);
  m.block_size = r.get("block_size", m.block_size);
  r.reject_unknown_keys();
  m.validate();
  return m;
}

DataConfig read_data(JsonObjectReader r) {
  DataConfig d;
  d.train_shards = r.required<std::string>("train_shards");
  d.val_shards = r.get("val_shards", d.val_shards);
  d.shuffle = r.get("shuffle", d.shuffle);
  d.tokenizer_dir = r.get("tokenizer_dir", d.tokenizer_dir);
  r.reject_unknown_keys();
  return d;
}

// 0, 1 or "m2" (see ZeroStage).
ZeroStage read_zero_stage(JsonObjectReader& r) {
  const Json value = r.get<Json>("zero_stage", Json(0));
  for (ZeroStage stage : {ZeroStage::replicate, ZeroStage::shard_all, ZeroStage::shard_m2}) {
    if (value == zero_stage_json(stage)) return stage;
  }
  fail("config key 'training.zero_stage' must be 0, 1 or \"m2\", got {}", value.dump());
}

TrainingConfig read_training(JsonObjectReader r) {
  TrainingConfig t;
  t.batch_size = r.get("batch_size", t.batch_size);
  t.seq_len = r.get("seq_len", t.seq_len);
  t.total_batch_tokens = r.get("total_batch_tokens", t.total_batch_tokens);
  t.steps = r.get("steps", t.steps);
  t.token_budget = r.get("token_budget", t.token_budget);
  t.grad_clip = r.get("grad_clip", t.grad_clip);
  t.eval_interval = r.get("eval_interval", t.eval_interval);
  t.eval_batches = r.get("eval_batches", t.eval_batches);
  t.seed = r.get("seed", t.seed);
  t.threads = r.get("threads", t.threads);
  t.max_consecutive_skips = r.get("max_consecutive_skips", t.max_consecutive_skips);
  t.time_limit_minutes = r.get("time_limit_minutes", t.time_limit_minutes);
  t.outlier_zscore = r.get("outlier_zscore", t.outlier_zscore);
  t.outlier_window = r.get("outlier_window", t.outlier_window);
  t.zero_stage = read_zero_stage(r);
  t.forgetting_probe_step = r.get("forgetting_probe_step", t.forgetting_probe_step);
  t.forgetting_probe_interval = r.get("forgetting_probe_interval", t.forgetting_probe_interval);
  t.forgetting_probe_inject = r.get("forgetting_probe_inject", t.forgetting_probe_inject);
  r.reject_unknown_keys();
  if (t.forgetting_probe_step < 0) fail("config key 'training.forgetting_probe_step' must be >= 0, got {}", t.forgetting_probe_step);
  if (t.forgetting_probe_interval < 1) {
    fail("config key 'training.forgetting_probe_interval' must be >= 1, got {}", t.forgetting_probe_interval);
  }
  if (t.batch_size <= 0) fail("config key 'training.batch_size' must be positive, got {}", t.batch_size);
  if (t.seq_len <= 0) fail("config key 'training.seq_len' must be positive, got {}", t.seq_len);
  if (t.total_batch_tokens == 0) t.total_batch_tokens = static_cast<int64_t>(t.batch_size) * t.seq_len;
  if (t.total_batch_tokens % (static_cast<int64_t>(t.batch_size) * t.seq_len) != 0) {
    fail("config key 'training.total_batch_tokens' ({}) must be a multiple of batch_size × seq_len ({} × {} = {})",
         t.total_batch_tokens, t.batch_size, t.seq_len, static_cast<int64_t>(t.batch_size) * t.seq_len);
  }
  if ((t.steps > 0) == (t.token_budget > 0)) {
    fail("set exactly one of 'training.steps' and 'training.token_budget' (got steps {}, token_budget {})", t.steps,
         t.token_budget);
  }
  if (t.grad_clip < 0) fail("config key 'training.grad_clip' must be >= 0, got {}", t.grad_clip);
  if (t.eval_interval < 0 || t.eval_batches < 0) fail("config keys 'training.eval_interval' and 'training.eval_batches' must be >= 0");
  if (t.threads < 0) fail("config key 'training.threads' must be >= 0, got {}", t.threads);
  if (t.max_consecutive_skips < 1) fail("config key 'training.max_consecutive_skips' must be >= 1, got {}", t.max_consecutive_skips);
  if (t.outlier_zscore < 0) fail("config key 'training.outlier_zscore' must be >= 0, got {}", t.outlier_zscore);
  if (t.outlier_window < 10) fail("config key 'training.outlier_window' must be at least 10, got {}", t.outlier_window);
  if (t.time_limit_minutes < 0) fail("config key 'training.time_limit_minutes' must be >= 0, got {}", t.time_limit_minutes);
  return t;
}

CheckpointConfig read_checkpoint(JsonObjectReader r) {
  CheckpointConfig c;
  c.dir = r.get("dir", c.dir);
  c.interval = r.get("interval", c.interval);
  c.keep_last = r.get("keep_last", c.keep_last);
  c.milestone_interval = r.get("milestone_interval", c.milestone_interval);
  r.reject_unknown_keys();
  if (c.interval < 0) fail("config key 'checkpoint.interval' must be >= 0, got {}", c.interval);
  if (c.keep_last < 0) fail("config key 'checkpoint.keep_last' must be >= 0, got {}", c.keep_last);
  if (c.milestone_interval < 0) fail("config key 'checkpoint.milestone_interval' must be >= 0, got {}", c.milestone_interval);
  return c;
}

LoggingConfig read_logging(JsonObjectReader r) {
  LoggingConfig l;
  l.run_dir = r.get("run_dir", l.run_dir);
  l.interval = r.get("interval", l.interval);
  l.sample_tokens = r.get("sample_tokens", l.sample_tokens);
  l.sample_prompt = r.get("sample_prompt", l.sample_prompt);
  l.sample_temperature = r.get("sample_temperature", l.sample_temperature);
  l.sample_top_k = r.get("sample_top_k", l.sample_top_k);
  r.reject_unknown_keys();
  if (l.run_dir.empty()) fail("config key 'logging.run_dir' must not be empty");
  if (l.interval <= 0) fail("config key 'logging.interval' must be positive, got {}", l.interval);
  if (l.sample_tokens < 0 || l.sample_top_k < 0 || l.sample_temperature < 0) {
    fail("config keys 'logging.sample_tokens', 'logging.sample_top_k' and 'logging.sample_temperature' must be >= 0");
  }
  return l;
}

CudaConfig read_cuda(JsonObjectReader r) {
  CudaConfig c;
  c.attention = r.get("attention", c.attention);
  c.recompute = r.get("recompute", c.recompute);
  c.deterministic = r.get("deterministic", c.deterministic);
  r.reject_unknown_keys();
  if (c.recompute != "none" && c.recompute != "gelu" && c.recompute != "gelu+layernorm") {
    fail("config key 'cuda.recompute' must be \"none\", \"gelu\" or \"gelu+layernorm\", got \"{}\"", c.recompute);
  }
  if (c.attention != "cudnn" && c.attention != "reference") {
    fail("config key 'cuda.attention' must be \"cudnn\" or \"reference\", got \"{}\"", c.attention);
  }
  return c;
}

Json read_optimizer(JsonObjectReader r, const Json& section) {
  std::string name = r.required<std::string>("name");
  const OptimizerSpec& spec = find_optimizer(name);
  Json hyperparameters = section;
  hyperparameters.erase("name");
  Json normalized = spec.normalize(hyperparameters);
  normalized["name"] = name;
  return normalized;
}

}  // namespace

int TrainingConfig::accumulation_steps(int world_size) const {
  int64_t per_micro = static_cast<int64_t>(batch_size) * seq_len * world_size;
  if (total_batch_tokens % per_micro != 0) {
    fail("training.total_batch_tokens ({}) is not a multiple of batch_size × seq_len × ranks ({})", total_batch_tokens, per_micro);
  }
  return static_cast<int>(total_batch_tokens / per_micro);
}

Config Config::from_json(const Json& json) {
  JsonObjectReader root(json, "");
  Config c;
  c.description = root.get("description", c.description);
  c.device = root.get("device", c.device);
  if (c.device != "cpu" && c.device != "cuda") fail("config key 'device' must be \"cpu\" or \"cuda\", got \"{}\"", c.device);
  c.model = read_model(root.object("model"));
  c.data = read_data(root.object("data"));
  static const Json empty = Json::object();
  const Json& optimizer_section = json.contains("optimizer") ? json.at("optimizer") : empty;
  c.optimizer = read_optimizer(root.object("optimizer"), optimizer_section);
  JsonObjectReader schedule = root.object("schedule");
  c.schedule = ScheduleConfig::from_json(schedule);
  c.training = read_training(root.object("training"));
  c.checkpoint = read_checkpoint(root.object("checkpoint"));
  c.logging = read_logging(root.object("logging"));
  c.cuda = read_cuda(root.object("cuda"));
  root.reject_unknown_keys();
  if (c.training.seq_len > c.model.block_size) {
    fail("training.seq_len ({}) exceeds model.block_size ({})", c.training.seq_len, c.model.block_size);
  }
  return c;
}

int64_t Config::total_steps() const {
  if (training.steps > 0) return training.steps;
  return std::max<int64_t>(1, training.token_budget / training.total_batch_tokens);
}

std::filesystem::path Config::checkpoint_dir() const {
  return checkpoint.dir.empty() ? run_dir() / "checkpoints" : std::filesystem::path(checkpoint.dir);
}

Json Config::to_json() const {
  return Json{
      {"description", description},
      {"device", device},
      {"model",
       {{"vocab_size", model.vocab_size}, {"padded_vocab_size", model.padded_vocab_size}, {"n_layer", model.n_layer},
        {"n_embd", model.n_embd}, {"n_head", model.n_head}, {"block_size", model.block_size}}},
      {"data",
       {{"train_shards", data.train_shards}, {"val_shards", data.val_shards}, {"shuffle", data.shuffle},
        {"tokenizer_dir", data.tokenizer_dir}}},
      {"optimizer", optimizer},
      {"schedule", schedule.to_json()},
      {"training",
       {{"batch_size", training.batch_size}, {"seq_len", training.seq_len},
        {"total_batch_tokens", training.total_batch_tokens}, {"steps", training.steps},
        {"token_budget", training.token_budget}, {"grad_clip", training.grad_clip},
        {"eval_interval", training.eval_interval}, {"eval_batches", training.eval_batches}, {"seed", training.seed},
        {"threads", training.threads}, {"max_consecutive_skips", training.max_consecutive_skips},
        {"time_limit_minutes", training.time_limit_minutes}, {"outlier_zscore", training.outlier_zscore},
        {"outlier_window", training.outlier_window}, {"zero_stage", zero_stage_json(training.zero_stage)},
        {"forgetting_probe_step", training.forgetting_probe_step},
        {"forgetting_probe_interval", training.forgetting_probe_interval},
        {"forgetting_probe_inject", training.forgetting_probe_inject}}},
      {"checkpoint",
       {{"dir", checkpoint.dir}, {"interval", checkpoint.interval}, {"keep_last", checkpoint.keep_last},
        {"milestone_interval", checkpoint.milestone_interval}}},
      {"logging",
       {{"run_dir", logging.run_dir}, {"interval", logging.interval}, {"sample_tokens", logging.sample_tokens},
        {"sample_prompt", logging.sample_prompt}, {"sample_temperature", logging.sample_temperature},
        {"sample_top_k", logging.sample_top_k}}},
      {"cuda", {{"attention", cuda.attention}, {"recompute", cuda.recompute}, {"deterministic", cuda.deterministic}}},
  };
}

void apply_override(Json& document, const std::string& assignment) {
  auto equals = assignment.find('=');
  if (equals == std::string::npos || equals == 0) {
    fail("override '{}' is not of the form section.key=value", assignment);
  }
  std::string path = assignment.substr(0, equals);
  std::string text = assignment.substr(equals + 1);
  Json value = Json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (value.is_discarded()) value = text;
  // The config is written out as JSON (run dir, checkpoints), which needs UTF-8.
  try {
    (void)Json(path).dump();
    (void)value.dump();
  } catch (const Json::type_error&) {
    fail("override '{}' is not valid UTF-8", assignment);
  }
  Json* node = &document;
  size_t start = 0;
  while (true) {
    size_t dot = path.find('.', start);
    std::string key = path.substr(start, dot == std::string::npos ? std::string::npos : dot - start);
    if (key.empty()) fail("override '{}' has an empty key", assignment);
    if (!node->is_object()) fail("override '{}': '{}' is not a section", assignment, path.substr(0, start - 1));
    if (dot == std::string::npos) {
      (*node)[key] = value;
      return;
    }
    node = &(*node)[key];
    if (node->is_null()) *node = Json::object();
    start = dot + 1;
  }
}

Config load_config(const std::filesystem::path& path, const std::vector<std::string>& overrides) {
  Json document = parse_json_text(read_text_file(path), path.string());
  try {
    for (const auto& assignment : overrides) apply_override(document, assignment);
    return Config::from_json(document);
  } catch (const Error& e) {
    fail_file(path, "{}", e.what());
  }
}

}  // namespace emix
